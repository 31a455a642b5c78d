// Package errtext holds a check over the whole repository: no non-test
// source decides anything by reading an error's message. Errors are
// classified with errors.Is, errors.As and typed values (see
// transport.HandshakeError); message text is for people.
package errtext
