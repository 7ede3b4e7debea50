"""diff2in1: one Stable Diffusion model for dense perception and multi-modal data generation."""

__version__ = "0.1.0"
