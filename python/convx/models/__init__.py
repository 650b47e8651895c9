"""Models built on convx layers: the seed chapter's digits CNN (with training and
save/load) and AlphaGo's policy network."""
from .digits_cnn import DigitsCNN, TrainHistory, accuracy, load, predict, save, train
from .go_policy import GoPolicyNet

__all__ = ["DigitsCNN", "TrainHistory", "train", "predict", "accuracy", "save", "load", "GoPolicyNet"]
