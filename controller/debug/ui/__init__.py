"""`vethguard ui`: a local web page over the debug commands (policies, reachability, flows, a
graph of recent flows, explain). api.py builds the JSON from the debug modules (pure),
flows.py keeps the followed flows, server.py serves the API and static/ (no asset from the
internet)."""
