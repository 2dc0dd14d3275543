"""The bem side: typed records of the Calls API, their tolerant decoding, the client, the simulator."""
