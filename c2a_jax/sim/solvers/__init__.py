"""Oracle solvers: scripted policies that solve the tasks and record the code they run."""
