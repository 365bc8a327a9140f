"""Data sets of video clips [T, C, H, W] in [-1, 1]: Stochastic Moving MNIST
(generated from real MNIST digits) and folders of videos or frames."""
from .mnist import mnist_digits
from .smmnist import StochasticMovingMNIST
from .video_folder import VideoFolder

__all__ = ["StochasticMovingMNIST", "VideoFolder", "mnist_digits"]
