"""faceattr: facial attribute recognition (the 40 CelebA attributes) from one command line."""

__version__ = "0.1.0"
