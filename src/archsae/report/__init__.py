"""The HTML report: configuration, metrics table, stability figures, concept galleries with token heatmaps."""

from .gallery import Concept, concept_gallery
from .html import write_report
from .plots import stability_plots

__all__ = ["Concept", "concept_gallery", "stability_plots", "write_report"]
