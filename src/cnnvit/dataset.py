"""What every part of the pipeline knows about CIFAR-10's images: their size and class count.

`cnnvit prepare` refuses data of another shape or class count, and every model is built for it.
"""

IMG_SIZE = 32
CHANNELS = 3
NUM_CLASSES = 10
