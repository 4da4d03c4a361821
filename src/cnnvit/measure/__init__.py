"""Measurements of models on images: CIFAR-10-C corruptions, attention distance, and what a model costs to run."""
