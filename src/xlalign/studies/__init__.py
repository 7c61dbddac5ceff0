"""Studies built on a run folder: the layer sweep (``layers``) and the origin study (``origin``)."""
