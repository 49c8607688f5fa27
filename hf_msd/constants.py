"""Names every layer of hf_msd shares: the problem types of a classifier and the label of an unscored example.

This module imports nothing of hf_msd, so the data collators, the teacher-output cache and the losses can all
read it without importing one another.
"""

SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"
REGRESSION = "regression"
PROBLEM_TYPES = (SINGLE_LABEL, MULTI_LABEL, REGRESSION)
#: The label of an unlabelled example or an unscored token (transformers' ignore index).
IGNORE_INDEX = -100
