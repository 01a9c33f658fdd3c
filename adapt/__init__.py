"""adapt: prompt tuning and few-shot adaptation of GLIP, faithful to the official numbers."""

__version__ = "0.1.0"
