"""Medscan: labelled medical images in, validated, compared and promoted classifiers out."""
