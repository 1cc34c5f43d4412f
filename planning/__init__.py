"""`streamer plan`: the kernels of each stage recorded on meta tensors (ops, count), priced per kernel against
a GPU table at stated efficiencies (budget, assumptions), the bus formula (traffic), sessions per GPU (batch),
measured efficiencies from a GPU run (measured), the plan as JSON (report)."""
