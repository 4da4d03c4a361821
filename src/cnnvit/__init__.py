"""cnnvit: CNN vs ViT vs hybrid on CIFAR-10, a replication of Chai (2024)."""

import time

START = time.perf_counter()  # when this process first imported cnnvit: `cnnvit plan` counts start-up from here
