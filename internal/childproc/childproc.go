// Package childproc holds the process attributes that tests and the
// benchmark harness give the processes they start, so that a child never
// outlives its parent, whatever the platform offers for that.
package childproc
