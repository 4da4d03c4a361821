"""Numbers from runs -> statistics: intervals over seeds and test images, the claims' verdicts,
robustness, per-image predictions."""
