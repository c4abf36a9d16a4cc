"""icas-ray: distributed image clustering and segmentation labelling on Ray."""
__version__ = "0.1.0"
