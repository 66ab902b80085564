"""Request inputs: validation, images and their policy, http fetch, chat template and tokenising, the preprocessed-image cache."""
