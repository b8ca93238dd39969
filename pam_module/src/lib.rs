//! pam_sparekey.so: accepts sparekey bypass codes at a PAM prompt.
