"""Metrics: COCO box AP (the paper's detection metric) and the others adapt reports."""
