"""Inference helpers: image loading, model-size resizing and result pictures/exports.

See `diff2in1.inference.image_processor`.
"""
