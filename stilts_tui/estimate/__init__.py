"""What a plan will cost before it runs: finished runs read by shape, cost, wall time, predicted order."""
