# Hydra configs of this plugin, laid out like mmxattn's own conf/ (one folder per config group).
# This file must exist: Hydra reads pkg:// configs only from regular packages.
