"""`streamer plan`: FLOPs and bytes per stage counted on meta tensors, a GPU table, the bus formula, a verdict."""
