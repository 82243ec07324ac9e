# U-Boot boot script for the ota-slot A/B scheme (hush shell). Compile: mkimage -T script -d u-boot-ota.cmd boot.scr
#
# Environment (written by ota_slot::UBootEnv through fw_setenv on a REDUNDANT environment):
#   ota_primary=a|b        slot that boots by default (the committed one)
#   ota_trial_slot=a|b     slot under trial (unset: none)
#   upgrade_available=0|1  a trial is pending or running
#   bootcount=N            trial boots attempted (this script increments it)
#   bootlimit=N            trial boots allowed (1..9: setexpr counts in hex)
#   ota_bad_a=0|1, ota_bad_b=0|1   slot must not boot until re-installed
# Do not enable CONFIG_BOOTCOUNT_ENV as well: it would count a second time.
# Board specifics to adapt: the partitions of slot a/b (mmc 0:2 / 0:3) and the load/boot commands.
# This is the same decision as ota_slot::BootState::power_on (tested in the crate).
# u-boot-ota-qemu-x86.cmd is this script for Debian's QEMU U-Boot (no env storage, no setexpr), booted for
# real by the ota-e2e test qemu_boot.

setenv ota_boot ${ota_primary}
if test "${upgrade_available}" = "1"; then
  # The trial slot may boot if it is not marked bad and has tries left.
  setenv ota_try 0
  if test "${ota_trial_slot}" = "a" && test "${ota_bad_a}" != "1"; then setenv ota_try 1; fi
  if test "${ota_trial_slot}" = "b" && test "${ota_bad_b}" != "1"; then setenv ota_try 1; fi
  if test "${ota_try}" = "1" && test ${bootcount} -lt ${bootlimit}; then
    setexpr bootcount ${bootcount} + 1
    setenv ota_boot ${ota_trial_slot}
  else
    # Tries exhausted (or the trial slot was marked bad): the trial is over, the primary boots.
    setenv upgrade_available 0
    setenv ota_trial_slot
    setenv bootcount 0
  fi
  # Scratch: not saved. (ota_boot is saved along; the agent ignores it.)
  setenv ota_try
  saveenv
fi
# A primary marked bad gives way to the other slot if that one is not bad.
if test "${ota_boot}" = "a" && test "${ota_bad_a}" = "1" && test "${ota_bad_b}" != "1"; then setenv ota_boot b; fi
if test "${ota_boot}" = "b" && test "${ota_bad_b}" = "1" && test "${ota_bad_a}" != "1"; then setenv ota_boot a; fi

if test "${ota_boot}" = "a"; then setenv ota_part 2; else setenv ota_part 3; fi
setenv bootargs "${bootargs} root=/dev/mmcblk0p${ota_part} rootwait ota.slot=${ota_boot}"
load mmc 0:${ota_part} ${kernel_addr_r} /boot/Image
load mmc 0:${ota_part} ${fdt_addr_r} /boot/${fdtfile}
booti ${kernel_addr_r} - ${fdt_addr_r}
