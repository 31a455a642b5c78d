//go:build windows

package auth

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/windows"
)

// writeRights are the access bits that let a holder change a file.
const writeRights = windows.FILE_WRITE_DATA | windows.FILE_APPEND_DATA | windows.GENERIC_WRITE | windows.GENERIC_ALL | windows.WRITE_DAC | windows.WRITE_OWNER

// CheckTrustFileMode refuses a file that says whom this side trusts (a pins
// file, a CA bundle, a file of allow rules) when its access control list
// lets Everyone, Authenticated Users, BUILTIN\Users, Guests or anonymous
// logons change it, or it has none. what names the file in the error.
func CheckTrustFileMode(path, what string) error {
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	sd, err := windows.GetNamedSecurityInfo(path, windows.SE_FILE_OBJECT, windows.DACL_SECURITY_INFORMATION)
	if err != nil {
		return fmt.Errorf("%s %s access control list: %w", what, path, err)
	}
	fix := fmt.Sprintf("icacls %s /inheritance:r /grant:r \"%%USERNAME%%:F\"", path)
	dacl, _, err := sd.DACL()
	if err != nil || dacl == nil {
		return &TrustFileError{Path: path, What: what, Why: "it has no access control list, so every user can change it", Fix: fix}
	}
	for i := uint32(0); i < uint32(dacl.AceCount); i++ {
		var ace *windows.ACCESS_ALLOWED_ACE
		if err := windows.GetAce(dacl, i, &ace); err != nil {
			return fmt.Errorf("%s %s access control entry %d: %w", what, path, i, err)
		}
		if ace.Header.AceType != windows.ACCESS_ALLOWED_ACE_TYPE || ace.Mask&writeRights == 0 {
			continue
		}
		sid := (*windows.SID)(unsafe.Pointer(&ace.SidStart))
		for _, broad := range broadReaders {
			if sid.IsWellKnown(broad) {
				return &TrustFileError{Path: path, What: what, Why: sid.String() + " can change it", Fix: fix}
			}
		}
	}
	return nil
}
