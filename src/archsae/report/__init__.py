"""The HTML report: configuration, metrics table, concept galleries with token heatmaps."""

from .gallery import Concept, concept_gallery
from .html import write_report

__all__ = ["Concept", "concept_gallery", "write_report"]
