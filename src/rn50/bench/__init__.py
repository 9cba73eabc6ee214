"""`rn50 bench`: training throughput measured, and the ImageNet-1k run it projects."""
