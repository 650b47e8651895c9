"""Pictures of what a CNN computes and learns (matplotlib; each function returns
arrays and, given ``path``, writes a PNG)."""
from .activation_max import (Maximized, activation_degree, class_inputs, filter_inputs, gradient_ascent,
                             neuron_inputs, plot_activation_degree)
from .conv_as_dense import ConvAsDense, conv_as_dense_matrix, parameter_comparison, plot_conv_as_dense
from .dream import Dream, deep_dream, layer_objective
from .filters import feature_maps, first_layer_filters
from .style import RandomPyramidNet, StyleLoss, StyleResult, VGGFeatures, gram_matrix, style_transfer

__all__ = ["first_layer_filters", "feature_maps", "activation_degree", "plot_activation_degree", "gradient_ascent",
           "Maximized", "filter_inputs", "neuron_inputs", "class_inputs", "deep_dream", "layer_objective", "Dream",
           "style_transfer", "StyleLoss", "StyleResult", "RandomPyramidNet", "VGGFeatures", "gram_matrix",
           "conv_as_dense_matrix", "plot_conv_as_dense", "parameter_comparison", "ConvAsDense"]
