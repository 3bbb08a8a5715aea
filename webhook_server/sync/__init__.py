"""Scheduled pulls from external APIs into the event store (`dfm sync run`).

``config`` is the contract the operator renders; ``pagination`` and ``documents`` read the API's
answers (pure); ``client`` asks with outbound manners; ``state`` keeps each schedule's resume
point, watermark and circuit in PostgreSQL; ``runner`` walks the pages and commits each page's
events with its resume point; ``summary`` is what a run reports (the job's termination message).
"""
