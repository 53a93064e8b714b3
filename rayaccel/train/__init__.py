"""Ray Train: the driver that runs a job (`runner`) and the loop every worker runs (`loop`)."""
