"""kd2deploy: distil, export, benchmark and report a small model that ships."""

__version__ = "0.1.0"
