# U-Boot boot script for the ota-slot A/B scheme on Debian's U-Boot for QEMU x86 (package u-boot-qemu,
# /usr/lib/u-boot/qemu-x86/u-boot.rom under qemu-system-x86_64; the qemu-x86_64 build has the same
# limits but resets when zboot starts the kernel).
# Compile: mkimage -A x86 -T script -C none -d u-boot-ota-qemu-x86.cmd boot.scr
#
# The same decision as u-boot-ota.cmd (and ota_slot::BootState::power_on), adapted to what that build has:
# - CONFIG_ENV_IS_NOWHERE: U-Boot keeps no environment of its own, so this script reads and writes the
#   REDUNDANT environment that fw_printenv/fw_setenv (libubootenv) use, on its own disk (virtio 1, like an
#   env flash chip): copy 0 at sector 0, copy 1 at sector 0x20, 0x4000 bytes each. fw_env.config:
#     /dev/vdb 0x0    0x4000
#     /dev/vdb 0x4000 0x4000
#   Each copy is crc32 (4 bytes, little-endian) | flag (1 byte) | data; the valid copy with the newer flag
#   is current (255 wraps to 0), and a save writes the whole environment (as saveenv would) to the OTHER
#   copy with flag + 1, as libubootenv does, so a power cut in the middle of a write leaves the old copy
#   current. The script saves only when a trial is pending (to count it or to end it).
# - no setexpr: counters go through a successor loop.
# Slots: virtio 0 partitions 2 (a) and 3 (b), each an ext4 file system with /vmlinuz and /initrd.

# Scratch memory (the default env's kernel_addr_r is 0x1000000, scriptaddr 0x7000000; the VM needs 1 GiB):
# copies at 0x8000000 and 0x8100000, import/export buffers at 0x84/0x85/0x86xxxxx.
virtio dev 1
virtio read 0x8000000 0x0 0x20
virtio read 0x8100000 0x20 0x20

# Which copy is current: the newer flag (libubootenv's rule), unless its crc is bad.
setenv ota_env_cur 0
if itest.b *0x8100004 > *0x8000004; then setenv ota_env_cur 1; fi
if itest.b *0x8000004 == 0xff && itest.b *0x8100004 == 0; then setenv ota_env_cur 1; fi
if itest.b *0x8100004 == 0xff && itest.b *0x8000004 == 0; then setenv ota_env_cur 0; fi
# env import -c wants crc | data: move the crc next to the data (over the flag byte's place).
setenv ota_import0 'cp.b 0x8000000 0x8400000 4; cp.b 0x8000005 0x8400004 0x3ffb; env import -c 0x8400000 0x3fff'
setenv ota_import1 'cp.b 0x8100000 0x8400000 4; cp.b 0x8100005 0x8400004 0x3ffb; env import -c 0x8400000 0x3fff'
setenv ota_env_ok 0
if test ${ota_env_cur} = 1; then
  if run ota_import1; then setenv ota_env_ok 1; elif run ota_import0; then setenv ota_env_cur 0; setenv ota_env_ok 1; fi
else
  if run ota_import0; then setenv ota_env_ok 1; elif run ota_import1; then setenv ota_env_cur 1; setenv ota_env_ok 1; fi
fi
if test ${ota_env_ok} != 1; then echo "ota: no valid environment copy"; fi
if test -z "${ota_primary}"; then setenv ota_primary a; fi
echo "ota: env copy ${ota_env_cur} (valid ${ota_env_ok}): primary=${ota_primary} trial=${ota_trial_slot} upgrade_available=${upgrade_available} bootcount=${bootcount} bootlimit=${bootlimit} bad_a=${ota_bad_a} bad_b=${ota_bad_b}"

setenv ota_boot ${ota_primary}
if test "${upgrade_available}" = "1"; then
  # The trial slot may boot if it is not marked bad and has tries left.
  setenv ota_try 0
  if test "${ota_trial_slot}" = "a" && test "${ota_bad_a}" != "1"; then setenv ota_try 1; fi
  if test "${ota_trial_slot}" = "b" && test "${ota_bad_b}" != "1"; then setenv ota_try 1; fi
  if test "${ota_try}" = "1" && test ${bootcount} -lt ${bootlimit}; then
    # bootcount + 1 (bootlimit is at most 9).
    setenv ota_hit 0
    for v in 0 1 2 3 4 5 6 7 8 9; do
      if test ${ota_hit} = 1; then setenv bootcount ${v}; setenv ota_hit 2; fi
      if test ${ota_hit} = 0 && test ${v} = ${bootcount}; then setenv ota_hit 1; fi
    done
    setenv ota_boot ${ota_trial_slot}
  else
    # Tries exhausted (or the trial slot was marked bad): the trial is over, the primary boots.
    setenv upgrade_available 0
    setenv ota_trial_slot
    setenv bootcount 0
  fi

  # Save the whole environment, as saveenv would (U-Boot's defaults included; ota_boot goes along, the
  # agent ignores it), without this script's scratch variables.
  setenv ota_try
  setenv ota_hit
  setenv ota_env_ok
  setenv ota_import0
  setenv ota_import1
  # Stashed where the export does not see them: the current copy's flag (0x8700000) and which copy to
  # write, the other one (0x8700001).
  if test ${ota_env_cur} = 1; then cp.b 0x8100004 0x8700000 1; mw.b 0x8700001 0 1; else cp.b 0x8000004 0x8700000 1; mw.b 0x8700001 1 1; fi
  setenv ota_env_cur
  mw.b 0x8500000 0 0x4000
  env export -c -s 0x3fff 0x8500000
  # The new flag: the current copy's + 1 (255 wraps to 0), as libubootenv counts.
  setenv ota_flag_next 01
  setenv ota_hit 0
  for v in 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f 20 21 22 23 24 25 26 27 28 29 2a 2b 2c 2d 2e 2f 30 31 32 33 34 35 36 37 38 39 3a 3b 3c 3d 3e 3f 40 41 42 43 44 45 46 47 48 49 4a 4b 4c 4d 4e 4f 50 51 52 53 54 55 56 57 58 59 5a 5b 5c 5d 5e 5f 60 61 62 63 64 65 66 67 68 69 6a 6b 6c 6d 6e 6f 70 71 72 73 74 75 76 77 78 79 7a 7b 7c 7d 7e 7f 80 81 82 83 84 85 86 87 88 89 8a 8b 8c 8d 8e 8f 90 91 92 93 94 95 96 97 98 99 9a 9b 9c 9d 9e 9f a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af b0 b1 b2 b3 b4 b5 b6 b7 b8 b9 ba bb bc bd be bf c0 c1 c2 c3 c4 c5 c6 c7 c8 c9 ca cb cc cd ce cf d0 d1 d2 d3 d4 d5 d6 d7 d8 d9 da db dc dd de df e0 e1 e2 e3 e4 e5 e6 e7 e8 e9 ea eb ec ed ee ef f0 f1 f2 f3 f4 f5 f6 f7 f8 f9 fa fb fc fd fe ff 00; do
    if test ${ota_hit} = 1; then setenv ota_flag_next ${v}; setenv ota_hit 2; fi
    if test ${ota_hit} = 0 && itest.b *0x8700000 == 0x${v}; then setenv ota_hit 1; fi
  done
  setenv ota_hit
  if itest.b *0x8700001 == 0; then setenv ota_save_sector 0x0; else setenv ota_save_sector 0x20; fi
  # The redundant layout: crc | flag | data (the export is crc | data).
  mw.b 0x8600000 0 0x4000
  cp.b 0x8500000 0x8600000 4
  mw.b 0x8600004 ${ota_flag_next} 1
  cp.b 0x8500004 0x8600005 0x3ffb
  virtio dev 1
  virtio write 0x8600000 ${ota_save_sector} 0x20
  echo "ota: saved env copy at sector ${ota_save_sector} flag ${ota_flag_next}: trial=${ota_trial_slot} upgrade_available=${upgrade_available} bootcount=${bootcount}"
fi
# A primary marked bad gives way to the other slot if that one is not bad.
if test "${ota_boot}" = "a" && test "${ota_bad_a}" = "1" && test "${ota_bad_b}" != "1"; then setenv ota_boot b; fi
if test "${ota_boot}" = "b" && test "${ota_bad_b}" = "1" && test "${ota_bad_a}" != "1"; then setenv ota_boot a; fi

if test "${ota_boot}" = "a"; then setenv ota_part 2; else setenv ota_part 3; fi
echo "ota: booting slot ${ota_boot} (virtio 0:${ota_part})"
# no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check can fail (a panic).
setenv bootargs "console=ttyS0 panic=-1 no_timer_check ota.slot=${ota_boot}"
load virtio 0:${ota_part} ${kernel_addr_r} /vmlinuz
# The initrd well above where the kernel decompresses itself (the default ramdisk_addr_r, 64 MiB, is not).
load virtio 0:${ota_part} 0x20000000 /initrd
zboot ${kernel_addr_r} 0 0x20000000 ${filesize}
