"""mwnet: reproduce Meta-Weight-Net's Table 1 (Shu et al., NeurIPS 2019) from raw CIFAR."""

__version__ = "0.1.0"
