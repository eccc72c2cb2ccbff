"""Workflows: what a command runs end to end on top of training and evaluation — one experiment (train,
then evaluate), `ssl-aug eval` / `ssl-aug finetune` on an encoder, ablation grids, policy search, quality
gating of synthetic images, view grids, plots and the recipe-vs-data size checks."""
