"""The device path: session state resident on a torch device (a GPU, or the CPU twin); imports torch."""
