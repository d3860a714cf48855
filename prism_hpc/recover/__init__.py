"""The PRISM recovery engine: objective, teacher sampling, augmentation, the optimisation loop."""
