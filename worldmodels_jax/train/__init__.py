"""One module per learner: V (`vae`), M (`mdn`), C (`controller`)."""
