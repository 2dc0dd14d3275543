"""The synthetic canary: `judge` decides what one canary call's outcome was (pure, counted in
the batch's commit); `driver` creates the calls through the API client, only on the leader."""
