"""Training: one job a module.

runtime   where and in which number format the model runs (device, precision, autocast,
          channels_last, compile, DDP)
step      one optimizer step (`train_step`) and the guards around it (NaN streaks, bad files,
          BatchNorm statistics)
loaders   the dataset index and the train/val loaders of this rank
evaluate  one validation pass, and a checkpoint's evaluation
resume    what a checkpoint holds, choosing one to resume from and restoring it
records   what a run shows and writes (progress, steps.jsonl, TensorBoard, curves, summary)
loop      the run: set-up, the epoch, the fit
lr_finder the LR range test (uses runtime, step and loaders; never the loop)

Nothing is imported here, so importing a piece costs only what it needs.
"""
