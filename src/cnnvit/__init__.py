"""cnnvit: CNN vs ViT vs hybrid on CIFAR-10, a replication of Chai (2024)."""
