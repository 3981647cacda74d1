"""Where jobs live: job records and their recovery, the embedded and RQ queues, and the storage they are kept in."""
