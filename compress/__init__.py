"""compress: distill, quantize, export and benchmark a model for the edge from one recipe."""

__version__ = "0.1.0"
