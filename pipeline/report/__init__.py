"""The rate-distortion report: measure images, extend sweeps, BD-rates, tables, plots and HTML."""
