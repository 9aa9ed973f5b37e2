"""The face pipeline: decoding, alignment, detection to analysis frame."""
