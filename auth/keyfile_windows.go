//go:build windows

package auth

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/windows"
)

// broadReaders are the groups whose read access makes a key file readable by
// other users of the machine.
var broadReaders = []windows.WELL_KNOWN_SID_TYPE{
	windows.WinWorldSid,             // Everyone
	windows.WinAuthenticatedUserSid, // Authenticated Users
	windows.WinBuiltinUsersSid,      // BUILTIN\Users
	windows.WinBuiltinGuestsSid,     // BUILTIN\Guests
	windows.WinAnonymousSid,         // ANONYMOUS LOGON
}

// readRights are the access bits that let a holder read the file's contents.
const readRights = windows.FILE_READ_DATA | windows.GENERIC_READ | windows.GENERIC_ALL

// CheckKeyFileMode refuses a private-key file whose access control list lets
// Everyone, Authenticated Users, BUILTIN\Users, Guests or anonymous logons
// read it, or that has no access control list at all (which grants everyone
// full access). Grants to individual accounts and to Administrators and
// SYSTEM are accepted.
func CheckKeyFileMode(path string) error {
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("read key file: %w", err)
	}
	sd, err := windows.GetNamedSecurityInfo(path, windows.SE_FILE_OBJECT, windows.DACL_SECURITY_INFORMATION)
	if err != nil {
		return fmt.Errorf("read key file %s access control list: %w", path, err)
	}
	dacl, _, err := sd.DACL()
	if err != nil || dacl == nil {
		return fmt.Errorf("key file %s has no access control list: every user can read the private key (fix: icacls %s /inheritance:r /grant:r \"%%USERNAME%%:R\")", path, path)
	}
	for i := uint32(0); i < uint32(dacl.AceCount); i++ {
		var ace *windows.ACCESS_ALLOWED_ACE
		if err := windows.GetAce(dacl, i, &ace); err != nil {
			return fmt.Errorf("read key file %s access control entry %d: %w", path, i, err)
		}
		if ace.Header.AceType != windows.ACCESS_ALLOWED_ACE_TYPE || ace.Mask&readRights == 0 {
			continue
		}
		sid := (*windows.SID)(unsafe.Pointer(&ace.SidStart))
		for _, broad := range broadReaders {
			if sid.IsWellKnown(broad) {
				return fmt.Errorf("key file %s can be read by %s: other users can read the private key (fix: icacls %s /inheritance:r /grant:r \"%%USERNAME%%:R\")", path, sid.String(), path)
			}
		}
	}
	return nil
}
