"""The edit pipeline, transport-free: plain request types, planning (validation, levels,
cost), admission and the memory budget, the edit service, image decode and encode."""
