/* The probe guest's entry: the VMM starts it in 64-bit mode at the image's first byte
 * with the parameter block's address in rdi. Interrupts off, .bss zeroed, own stack. */
    .section .text.entry, "ax"
    .globl _start
    .code64
_start:
    cli
    cld
    mov %rdi, %r12
    lea __bss_start(%rip), %rdi
    lea __bss_end(%rip), %rcx
    sub %rdi, %rcx
    xor %eax, %eax
    rep stosb
    lea __stack_top(%rip), %rsp
    and $-16, %rsp
    mov %r12, %rdi
    call probe_main
1:  cli
    hlt
    jmp 1b
    .section .note.GNU-stack, "", @progbits
