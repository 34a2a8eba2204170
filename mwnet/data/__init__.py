"""Data layer: raw CIFAR in torchvision's layout (raw), corrupted splits (corrupt), loading them as tensors
(loading), small fake CIFAR for tests and CI (synthetic), and the `mwnet data ...` commands (cli)."""
