"""`rn50 bench`: throughput of the model step, of the data path and of both together, and what
an ImageNet-1k run would take and cost at those rates.

- model (model_step): training steps (forward, backward, SGD) on synthetic data already on the
  device, for each precision, channels_last on/off, torch.compile on/off and batch size asked
  for;
- data (data_path): the loader alone, on ImageNet-like JPEG files (real photos,
  rn50.data.photos) or the train files of a dataset, for each decode mode and worker count,
  against torchvision's ImageFolder with the classic ImageNet transforms (RandomResizedCrop,
  flip, ToTensor, Normalize) as the baseline; for decode gpu the device's decoding is included;
- end to end (end_to_end): the model step fed by the loader (the config's decode mode and
  workers).

Each figure is the median of `repeats` timed runs (after warm-up steps, or after the first
batch of a loader, so compilation and worker start-up are not counted); the data modes take
turns within each repeat, so a change in the machine's load hits them alike.

Asked for by name (--only): sync (sync_cost: the training step with and without its host
wait for the loss check, eager and compiled) and stages (gpu_stages: the `gpu` decode path
stage by stage, each with its host and total time).

The other modules: plan (what to measure: BenchPlan, its defaults, the flags' lists), timing
(device sync, median), run (every part of the plan in turn, into one JSON-able result),
projection (the ImageNet-1k epoch time and run cost from the measurements, also from an
earlier result) and report (the result as tables or JSON).
"""
