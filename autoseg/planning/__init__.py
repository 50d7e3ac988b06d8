"""Planning: the dataset fingerprint, the plan runner behind ``autoseg plan`` (fingerprint ->
planner -> preprocessing) and plans taken from another dataset. The pure rules are in
``autoseg.planners``.
"""
