"""TerraScope-Bench: build the six tasks from ground truth, evaluate a backend (accuracy and mask IoU).

``schema`` reads and writes the official parquet layout, ``build`` makes questions with
plausible distractors, ``answers`` holds the prompt and answer-extraction protocol, ``evaluate``
drives an answerer (the spectral backend, or anything with TerraScope's ``chat``), ``report``
turns scored samples into accuracy tables.
"""
